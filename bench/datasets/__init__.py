"""Built-in dataset readers. Each module registers one `bench.data.DatasetReader`."""
