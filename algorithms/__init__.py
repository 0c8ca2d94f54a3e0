"""Built-in speedup methods. Each registers under the `composerlite.algorithms` entry-point group,
exactly as a third-party plugin would, so the core never imports a specific algorithm."""
