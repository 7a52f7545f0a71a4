"""Prompt datasets: tokenizing and checking them, the collator, and the resumable prompt stream."""
