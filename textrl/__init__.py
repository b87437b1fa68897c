"""textrl: the core of an RL toolkit in which text generation is an environment.

This package holds what is independent of Tianshou and Gymnasium: the RL math
on masked ``[batch, time]`` tensors (GAE, whitening, PPO losses, KL
estimators, action distributions). ``agents`` builds Tianshou algorithms and
policies on it; ``envs`` holds the Gymnasium environments.
"""

__version__ = "0.1.0"
