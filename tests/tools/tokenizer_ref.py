#!/usr/bin/env python3
"""Reference tokenizers for tests/test_tokenizer.cpp (tests only).

  tokenizer_ref.py hf-train STYLE VOCAB CORPUS OUT.json   train a byte-level BPE tokenizer.json (Hugging Face
                                                          `tokenizers`); STYLE gpt2 (ByteLevel regex) or llama3
                                                          (Split with the Llama-3 pattern, then ByteLevel)
  tokenizer_ref.py hf-encode TOKENIZER TEXTS.json OUT.json encode each text of a JSON list (special tokens parsed,
                                                          none added); writes a JSON list of id lists
  tokenizer_ref.py spm-encode MODEL TEXTS.json OUT.json   the same with the Python sentencepiece package, if present

Exit status 3 when the needed Python package is missing (the test then skips, saying so).
"""
import json
import sys

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
          r"\s+(?!\S)|\s+")


def need(module):
    try:
        return __import__(module)
    except ImportError:
        print(f"python package '{module}' is not installed", file=sys.stderr)
        sys.exit(3)


def hf_train(style, vocab, corpus, out):
    tk = need("tokenizers")
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    tok = tk.Tokenizer(models.BPE(ignore_merges=(style == "llama3")))
    if style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|pad|>"] if style == "gpt2" else ["<|begin_of_text|>", "<|end_of_text|>"]
    trainer = trainers.BpeTrainer(vocab_size=int(vocab), special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    with open(corpus, encoding="utf-8") as f:
        text = f.read()
    tok.train_from_iterator([text[i:i + 4096] for i in range(0, len(text), 4096)], trainer=trainer)
    tok.save(out)


def hf_encode(path, texts_path, out):
    tk = need("tokenizers")
    tok = tk.Tokenizer.from_file(path)
    texts = json.load(open(texts_path, encoding="utf-8"))
    ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    json.dump(ids, open(out, "w"))


def spm_encode(path, texts_path, out):
    spm = need("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=path)
    texts = json.load(open(texts_path, encoding="utf-8"))
    json.dump([sp.encode(t) for t in texts], open(out, "w"))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"hf-train": hf_train, "hf-encode": hf_encode, "spm-encode": spm_encode}[cmd](*args)
