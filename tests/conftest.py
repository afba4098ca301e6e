import os

from hypothesis import HealthCheck, settings

# Shared machines are noisy: no per-example deadline. CI uses the same profile.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# fixtures shared across folders
pytest_plugins = ["tests.engine.fake_gpu"]
