"""The synthetic assistant world: prompts with gold judges, and simulated annotators.

Real human labels are not available here, so the world knows the truth: every
prompt comes with a judge that scores any response for helpfulness and safety
in [0, 1]. Runs report this gold reward next to the learned (proxy) reward.
"""
