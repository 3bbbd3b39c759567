"""The edge trainer's error: a run folder, clip or model folder a user must fix, named in the message."""


class EdgeError(ValueError):
    """Bad input to training or inference: the message names the file or setting and what to do."""
