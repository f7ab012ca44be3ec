package config_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/sluicehq/sluice/config"
)

// update rewrites the generated documents instead of comparing them
// (`make docs`).
var update = flag.Bool("update", false, "rewrite the generated documents under docs/ (make docs)")

// Every key of the configuration types is documented, and every documented
// key exists.
func TestGeneratedReferenceKeysDocumented(t *testing.T) {
	for _, p := range config.KeyDocsProblems() {
		t.Error(p)
	}
	if len(config.Keys()) < 50 {
		t.Errorf("only %d keys found: the walk of the types lost some", len(config.Keys()))
	}
}

// docs/reference/configuration.md is what the code generates today.
func TestGeneratedConfigurationReference(t *testing.T) {
	var b bytes.Buffer
	if err := config.WriteReference(&b); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("..", "docs", "reference", "configuration.md")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil { //nolint:gosec // a document of the repository
			t.Fatal(err)
		}
		return
	}
	old, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(old, b.Bytes()) {
		t.Errorf("%s is not what the configuration types generate (%v): run `make docs` and commit the result", path, err)
	}
}
