package config

// validateCluster checks the cluster section: its own values, and that
// broker names a broker whose engine holds the shared limits. Only a NATS
// broker (JetStream KV; the embedded one counts) can today.
func (c *Config) validateCluster() []error {
	if c.Cluster == nil {
		return nil
	}
	cl := c.Cluster.WithDefaults()
	errs := []error{cl.Validate("cluster")}
	var nats []string
	for _, name := range sortedKeys(c.Brokers) {
		if c.Brokers[name].NATS != nil {
			nats = append(nats, name)
		}
	}
	b, ok := c.Brokers[cl.Broker]
	switch {
	case cl.Broker == "":
		errs = append(errs, problem("cluster.broker", "required when several brokers are defined (nats brokers: %s)", list(nats)))
	case !ok:
		errs = append(errs, problem("cluster.broker", "undefined broker %q (nats brokers: %s)", cl.Broker, list(nats)))
	case b.NATS == nil:
		errs = append(errs, problem("cluster.broker", "broker %q is Kafka; the cluster engine runs on a NATS broker (JetStream KV) only, Kafka is not supported yet (nats brokers: %s)", cl.Broker, list(nats)))
	}
	return errs
}
