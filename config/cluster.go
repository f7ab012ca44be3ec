package config

// validateCluster checks the cluster section: its own values, and that
// broker names a broker whose engine holds the shared limits: a NATS
// broker (JetStream KV; the embedded one counts) or a Kafka broker
// (compacted topics, see consumer/kafka's KV).
func (c *Config) validateCluster() []error {
	if c.Cluster == nil {
		return nil
	}
	cl := c.Cluster.WithDefaults()
	errs := []error{cl.Validate("cluster")}
	names := sortedKeys(c.Brokers)
	_, ok := c.Brokers[cl.Broker]
	switch {
	case cl.Broker == "":
		errs = append(errs, problem("cluster.broker", "required when several brokers are defined (brokers: %s)", list(names)))
	case !ok:
		errs = append(errs, problem("cluster.broker", "undefined broker %q (brokers: %s)", cl.Broker, list(names)))
	}
	return errs
}
