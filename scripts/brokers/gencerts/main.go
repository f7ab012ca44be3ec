// Command gencerts writes a throw-away PKI for the secured Kafka broker that
// scripts/brokers/up.sh starts (kafka-secure): a CA, the broker's
// certificate for 127.0.0.1/localhost (also as one PEM key store file), a
// client certificate, and a second CA that trusts none of them. See
// internal/testpki for the file names.
//
//	go run ./scripts/brokers/gencerts -dir <run dir>/kafka-secure/pki
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/sluicehq/sluice/internal/testpki"
)

func main() {
	dir := flag.String("dir", "", "directory to write the PEM files into (created if missing)")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "gencerts: -dir is required")
		os.Exit(2)
	}
	if _, err := testpki.New(*dir); err != nil {
		fmt.Fprintln(os.Stderr, "gencerts:", err)
		os.Exit(1)
	}
}
