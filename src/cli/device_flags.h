// The device flags, one definition for every command: --device (a name of backend/registry.h) for the commands
// that run the model or an operator, and --precision / --activations for those that run the model (train, eval,
// bench step), and the data-parallel flags of those that train (train, bench step). Text becomes backend types here, once, with the messages that name the flag.
#pragma once
#include <cstdint>
#include <string>

#include "backend/options.h"
#include "cli/args.h"

namespace ttt::cli {

// Declares --device (default cpu); `gpu_note` says what runs on the GPU for this command.
void declare_device_flag(Args& a, const std::string& gpu_note);
// Declares --precision (default fp32) and --activations (default bf16).
void declare_precision_flags(Args& a);

// --device, checked: a device this build and this machine have (else "<command>: --device X: why").
std::string device_flag(const Args& a, const std::string& command);
// --precision and --activations, checked against `device` (reduced precision needs a GPU device; --activations
// needs --precision bf16) and parsed.
backend::EngineOptions engine_options_flags(const Args& a, const std::string& command, const std::string& device);

// Data parallelism under mpirun (train, bench step): declares --shard-optimizer and --grad-bucket-mb (default 25);
// grad_bucket_bytes_flag checks the latter (0 to 1e6 megabytes) and returns it in bytes.
void declare_data_parallel_flags(Args& a);
int64_t grad_bucket_bytes_flag(const Args& a, const std::string& command);

}  // namespace ttt::cli
