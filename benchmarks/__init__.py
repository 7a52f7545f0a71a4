"""Benchmarks of trl_replay_ppo: each module is a command writing its results under benchmarks/results/."""
