"""Tensor math of PPO for language models, free of models and trainers: masks and masked statistics, KL
estimators and controllers, advantages, losses, and the episode batch they read."""
