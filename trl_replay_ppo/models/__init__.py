"""Models and what runs them: the policy + critic wrapper and value heads, forward passes, generation,
and the model runner the trainer, replay and evaluation call."""
