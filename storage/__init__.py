"""The data contract: schemas, stage layout and atomic shard IO."""
