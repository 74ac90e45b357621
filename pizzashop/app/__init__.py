"""The application: the composition root (``shop``), the command line, the demo."""
