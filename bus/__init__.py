"""Message bus: the embedded local queue and the Kafka client factory; both offer partitions of batches."""
