"""Built-in methods. Each module registers one or more `bench.method.Method` classes."""
