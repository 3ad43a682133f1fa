"""fastray pipelines: the lesson pipelines, the engine that runs them, and the CLI."""
