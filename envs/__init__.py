"""Gymnasium environments of textrl, registered under the ``textrl/`` namespace.

- ``textrl/TextGeneration-v0``: text generation with a tokenizer, prompts and a reward
  function you pass (``gym.make(..., tokenizer=..., prompts=..., reward_fn=...)``);
  ``gym.make_vec`` gives the natively batched form.
- ``textrl/Copy-v0``, ``textrl/Reverse-v0``: toy tasks with a tiny vocabulary.
"""

import gymnasium as gym

from envs.text_generation import TextGenerationEnv, TextGenerationVectorEnv
from envs.vector import make_vector_env

_REGISTRATIONS = {
    "textrl/TextGeneration-v0": (
        "envs.text_generation:TextGenerationEnv",
        "envs.text_generation:TextGenerationVectorEnv",
    ),
    "textrl/Copy-v0": ("envs.toy_text:make_copy_env", "envs.toy_text:make_copy_vector_env"),
    "textrl/Reverse-v0": (
        "envs.toy_text:make_reverse_env",
        "envs.toy_text:make_reverse_vector_env",
    ),
}
for _env_id, (_entry_point, _vector_entry_point) in _REGISTRATIONS.items():
    if _env_id not in gym.registry:
        gym.register(id=_env_id, entry_point=_entry_point, vector_entry_point=_vector_entry_point)

__all__ = ["TextGenerationEnv", "TextGenerationVectorEnv", "make_vector_env"]
