"""Stream consumers: score events from Redis Streams, NATS JetStream or Kafka through the
dataplane.

```
source ──read──▶ consumer ──micro-batch──▶ dataplane.predict ──▶ output events ──▶ sink
   ▲                 │                                    └─ invalid events ──▶ dead-letter sink
   └──acknowledge────┘  (only once every output and dead letter of the batch is written)
```

- `events`: what a transport received, decoded into a row for the signature; results encoded.
- `transport`: the Source and Sink protocols and the URL scheme table (one module per broker).
- `redis_streams`, `nats_streams`, `kafka_streams`: the brokers.
- `micro_batch`: validate each event, predict the valid ones in one call, fall back per event.
- `consumer`: the loop: collect a batch, score, settle (write, then acknowledge), drain on stop.
- `metrics`: Prometheus metrics, consumer lag and the periodic progress line.
- `runner`: builds the dataplane and transports, handles signals, runs the consumer.
"""
