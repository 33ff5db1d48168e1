"""The agent's task: scenarios (tiers), the episode loop, the observation and its text, the
numeric features, the rubric, the runner, and the Gymnasium env."""
