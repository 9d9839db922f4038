"""clara: multimodal (image + text) sentiment analysis with the CLARA method."""
__version__ = "0.1.0"
