package nats

import "github.com/sluicehq/sluice/consumer"

// shardLoads is what consumer's shard metrics read of the partitions.
func shardLoads(st []ShardStatus) []consumer.ShardLoad {
	out := make([]consumer.ShardLoad, len(st))
	for i, s := range st {
		out[i] = consumer.ShardLoad{State: s.State, Lag: s.Lag, IteratorAge: s.IteratorAge}
	}
	return out
}
