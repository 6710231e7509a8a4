"""The application that drives the backends: the `makemore` command (cli), the backend registry,
the training driver (trainer), compare, diagnose, the bench runner, and plots and reports.

It stands on the framework-free core in `shared` and loads a backend (`impl_numpy`, `impl_torch`,
`impl_jax`) only through :func:`makemore.registry.get_backend` (docs/design.md, "Layout").
"""
