"""The version of dmfx: its one source, read by dmfx.__version__ and by the build (pyproject)."""
__version__ = "0.1.0"
