"""Checkpoints: the writer and the reader (which checks every file before anything is applied), checkpoint
directories and their rotation, and state files that cannot run code."""
