package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/cluster"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/consumer"
)

// newClusterEngine returns the cluster-wide limit engine of cfg's cluster
// section, or nil without one (then every limit is this process's own).
func newClusterEngine(cfg *config.Config, reg prometheus.Registerer, log *slog.Logger) (*cluster.Engine, error) {
	if cfg.Cluster == nil {
		return nil, nil
	}
	return cluster.New(*cfg.Cluster, cfg.Dispatch(), cluster.WithLogger(log), cluster.WithRegisterer(reg))
}

// wireCluster opens the cluster's broker and its two buckets (the shares
// and member records with a TTL; the rule book with history) and starts
// the engine's loop; a's close gives the shares back before the broker
// closes.
func (a *app) wireCluster(ctx context.Context) error {
	if a.cluster == nil {
		return nil
	}
	cc := a.cluster.Config()
	b, err := a.broker(ctx, "run", cc.Broker)
	if err != nil {
		return err
	}
	opener, ok := b.(consumer.KVOpener)
	if !ok {
		return fmt.Errorf("%w: cluster.broker: broker %q has no key-value engine (use a NATS or Kafka broker)", config.ErrInvalid, cc.Broker)
	}
	shares, err := opener.OpenKV(ctx, "sluice_cluster_"+cc.Name, consumer.KVOptions{
		TTL: 2 * cc.Lease, Description: "sluice cluster " + cc.Name + ": capacity shares and member records"})
	if err != nil {
		return fmt.Errorf("run: cluster: %w", err)
	}
	bookBucket := "sluice_cluster_" + cc.Name + "_book"
	book, err := opener.OpenKV(ctx, bookBucket, consumer.KVOptions{
		History: 16, Description: "sluice cluster " + cc.Name + ": the rule book changed through the API"})
	if err != nil {
		return fmt.Errorf("run: cluster: %w", err)
	}
	where := "nats kv " + bookBucket
	if w, ok := book.(interface{ Where() string }); ok {
		where = w.Where() // a KV that names itself (Kafka: its state topic)
	}
	a.bookStore = cluster.NewStore(book, where+" of broker "+cc.Broker)
	a.cluster.Start(shares)
	a.closers = append(a.closers, a.cluster.Stop)
	a.log.Info("cluster mode: limits shared with the other members", "cluster", cc.Name, "broker", cc.Broker,
		"lease", cc.Lease.String(), "member", a.cluster.ID())
	return nil
}

// newBook returns the limits book: over state_dir's limits.json on its
// own, or over the cluster's rule book, which it then follows (a change
// made through another member's API applies here within the watcher's
// delay).
func (a *app) newBook() (*admin.Book, error) {
	if a.bookStore == nil {
		return admin.NewBook(a.disp.Limiter(), a.cfg.Dispatch(), a.cfg.StateDir, admin.WithBookLogger(a.log))
	}
	var book *admin.Book
	var err error
	// Members starting together race to write the first rule book: a
	// refused compare-and-swap is retried on the new revision.
	for range 10 {
		book, err = admin.NewBook(a.disp.Limiter(), a.cfg.Dispatch(), a.cfg.StateDir,
			admin.WithBookLogger(a.log), admin.WithStore(a.bookStore))
		if err == nil || !errors.Is(err, cluster.ErrConflict) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.closers = append(a.closers, cancel)
	if err := a.bookStore.Watch(ctx, func() {
		if err := book.Refresh(); err != nil {
			a.log.Warn("cluster: applying the rule book changed by another member failed", "error", err)
		}
	}); err != nil {
		return nil, fmt.Errorf("cluster: watch the rule book: %w", err)
	}
	return book, nil
}

// clusterStatus is the GET /v1/cluster hook; nil on its own.
func (a *app) clusterStatus() func() any {
	if a.cluster == nil {
		return nil
	}
	return func() any { return a.cluster.Status() }
}
