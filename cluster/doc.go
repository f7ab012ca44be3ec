// Package cluster makes sluice's limits hold across every process of a
// deployment: the account limit, min_unreserved, reservations, the
// unreserved pool and every scope rule are shared by all the `sluice run`
// processes configured with the same cluster name.
//
//	cluster: {name: prod, broker: bus, lease: 10s}
//
// # Design: leased shares of capacity (the Doorman pattern)
//
// The Engine implements dispatch.Limits. Inside it runs the ordinary local
// dispatch.Limiter, not on the limits themselves but on this process's
// *shares* of them, so that Acquire, TryAcquire and Release never wait on
// the network and keep every local guarantee (all or nothing, fair queues
// across scopes, FIFO within one, slot leases). A background loop
// (every 200 ms) renews and rebalances the shares in the coordination
// engine; the admin Book sets the global limits on every process from the
// shared rule book (Store).
//
// Limits and their capacity. Each shared limit is one key of a KV bucket:
//
//   - "p": the unreserved pool, capacity account − Σ reservations (the
//     account limit is the pool plus the reservations, so it holds when
//     they do);
//   - "f.<function>": a reservation, capacity the reservation;
//   - "s.<scope>": the rule of one scope, capacity its matching rule's
//     concurrency (the scope's enabled exact rule, else "*").
//
// A "*" rule gives every scope its own budget, so scopes are unbounded in
// number: a process only has keys for scopes it has a demand on (slots
// held, invocations waiting, refused TryAcquires) or a share of; it drops
// its claim once both are zero, and the bucket's TTL (2 × lease) removes
// entries nobody renews. No key is written per request: at most one write
// per active limit per round, fewer when nothing changed (a claim is
// renewed every lease/3). Inside the local Limiter, a scope without a share
// meets a "*" rule of 0 and waits; its waiting is demand, and the next
// round wins it a share. TryAcquire (synchronous ingress) never waits: a
// refusal counts as demand for the next round, so a cold process answers
// 429 until then.
//
// Entries and compare-and-swap. An entry is {capacity, members: {id:
// {share, demand, seq}}}. Every change is a compare-and-swap on the entry's
// revision (JetStream KV Update with the last revision), so every written
// revision has Σ shares ≤ capacity as its writer saw it: there is no
// leader, no consensus protocol of ours — the engine's per-key CAS is the
// only agreement. A refused CAS is retried at the next round.
//
// Rebalancing. Each round a member reads the entry, computes the max-min
// fair split of the capacity over the demands of the live members
// (water-filling; what is left after every demand is met goes to members
// with a demand, as headroom, so their next invocations are admitted
// locally), and moves towards its part:
//
//   - shrinking: the local share is lowered first, then the claim is
//     written; the claim never drops below the slots still held, so what a
//     member holds is always covered by its claim;
//   - growing: only into capacity − Σ (live others' claims), and the claim
//     is written first, the local share raised only once the CAS succeeded.
//
// A member above its fair part gives back within a round of seeing the
// others' demand; the capacity reaches the member that waits at its next
// round: a hand-off takes about two rounds (plus the time running
// invocations take to finish when nothing is idle), measured by
// sluice_cluster_rebalance_seconds.
//
// Leases, never over-admitting. A claim lives for `lease` after its write:
//
//   - the holder counts from *before* it sent the write, and a guard
//     goroutine (independent of the engine's answers) stops granting on a
//     share 100 ms before that — a process that cannot reach the engine
//     keeps what it holds only until its lease ends, and grants nothing it
//     cannot prove is still its own;
//   - the others count from when *they first saw* that claim's seq, which is
//     after the write: so they consider it lapsed only after the holder has
//     stopped granting on it, whatever their wall clocks say (only clock
//     rates need to agree). Only then do they drop it from the entry and
//     hand its capacity out.
//
// So capacity moves from A to B only after A released it (its lower claim
// was written) or A's lease on it ended. kill -9: the dead process's
// claims lapse after `lease`; the others then take the capacity at their
// next round. Engine outage: every member stops granting when its leases
// end, and grants again after its first successful write once the engine
// is back (nats.go reconnects by itself); no restart. A restarted process
// is a new member (a new id): its old claims lapse after `lease`.
//
// Stopping. A stopping process closes its limits before its sources stop
// (Close: nothing more is granted), because the sources abandon their
// in-flight invocations: an abandoned invocation frees its slot at once,
// while the function may still be running it (an HTTP server need not
// notice that its client went away). The Engine therefore keeps claiming,
// and renewing, what it held when it closed, and Stop writes those claims
// once more (lowered to what was held, never raised, with a new seq) and
// leaves them to lapse a lease later as the others count; only what it
// held nothing on is given back at once. Without this, the others took the
// capacity within a round of the stop while the function still ran the
// abandoned invocations (TestClusterNATS's restart phase saw 7 running
// under a limit of 6).
//
// What a lease does not cover: an invocation already running when its
// process's lease ends (the process is cut off from the engine but not
// from the function) keeps running; the others may then grant that
// capacity anew, so for up to the function's duration the function may
// see more than the limit. Keep `lease` above the usual invocation time,
// or accept that window in a network partition between sluice and the
// engine. The same holds for an invocation abandoned at a stop or killed
// with its process (kill -9) that the function keeps running longer than
// a lease: the function decides when it stops.
//
// Changes of the limits. The rule book (reservations and rules changed
// through the API, with version, lastModified and origin) is one key of a
// second bucket with history (Store, an admin.Store); Save is a CAS on the
// revision last loaded, a watcher makes every other process's Book reload
// it (admin.Book.Refresh) within the watcher's delay, and it survives
// restarts of all processes. A lowered limit holds locally at once (a
// share is never above the current capacity) and the claims follow at the
// next round.
//
// Views. Every member renews a record "m.<id>" (its shares, demand, slots
// held and queues of waiters, every lease/3 and at most every second); the
// Engine's Usage and Scopes add the others' records to its own counts (and
// say what each member holds: ByProcess), and Queues lists the others'
// queues beside its own, each with its member (QueueStatus.Process):
// `sluice account`, `sluice limits` and `sluice queues` show the whole
// cluster, and which process holds what, on any process. Status is GET /v1/cluster
// (members, shares, demand, lease age). Each member queues its own waiters.
//
// Limits of this design. A round visits its limits one after the other
// (a read and at most one write each): with thousands of scopes active on
// one process at once a round takes longer, and hand-offs with it. The
// configuration file's layer of the limits is each process's own: members
// must run with the same limits in their files.
//
// Engines. The engine is reached through consumer.KVOpener (so the
// broker's connection and security settings apply), which two brokers
// implement. NATS: JetStream KV, the per-key CAS is the server's. Kafka
// (consumer/kafka's KV): a bucket is a compacted single-partition state
// topic (revision = record offset) with one writer, the member of a
// consumer group that owns the partition of a requests topic; it decides
// the CAS requests in that partition's order and writes the accepted
// values and the answers in Kafka transactions, under a transactional id
// every leader shares, so a new leader's first transaction fences a zombie
// one. The engine's use is the same on both — Get, then one CAS per limit
// per round — but on Kafka a Get reads the process's own copy (a CAS on a
// stale read is refused and retried next round) and a leader killed
// without leaving stops every write until the group's session (6 s)
// replaces it: the members' leases may end meanwhile and they then grant
// nothing until the new leader answers, as in an engine outage. A Kafka
// member that finds a bucket topic deleted and recreated, or the state's
// offsets going back, fails every call from then on (an engine outage
// until the processes restart: revisions of another topic's history could
// let a CAS succeed against the wrong value). On either engine a write
// whose answer timed out may have landed: the engine gives capacity back
// before it writes and takes more only after a write it saw succeed, so
// such a write holds capacity unused at worst until the next round reads
// the key again; Store.Save reads the book back before it answers.
//
// It imports dispatch (the Limits it implements), admin (the Store it
// implements) and consumer (the KV seam); nothing imports it but config
// (its section) and cmd.
package cluster
