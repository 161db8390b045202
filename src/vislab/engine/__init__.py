"""Training engine: LightningModules, DataModules and the one place that builds the Trainer."""
