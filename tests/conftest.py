import os

# The tests must not depend on which third-party plugins a developer has installed,
# except the example plugin, which the tests install themselves (see test_plugins.py).
os.environ.setdefault("KERZOO_PLUGINS", "example")
