"""Built-in example models, usable as refs such as ``onnxgate.examples.digits:trained_digits_cnn``."""
