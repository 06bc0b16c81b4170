"""The one error type of the package: a checkpoint (file, config field, tensor) that cannot be used, named."""


class CheckpointError(ValueError):
    pass
