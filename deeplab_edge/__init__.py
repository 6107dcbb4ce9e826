"""deeplab-edge: DeepLab from a PyTorch model to fast, measured inference on GPUs and Jetson."""

__version__ = "0.1.0"
