"""Import-only part of the flash_attn stand-in: the public model imports these names; padded batches are not
served (bench/public_lact_step.py feeds full sequences without an attention mask)."""


def _unsupported(*args, **kwargs):
    raise NotImplementedError("flash_attn stand-in: padded batches are not served")


index_first_axis = pad_input = unpad_input = _unsupported
