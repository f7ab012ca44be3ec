package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/sluicehq/sluice/config"
)

// The complete example of configuration.md is a valid configuration.
func TestConfigurationExampleValidates(t *testing.T) {
	b, err := os.ReadFile("configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)## A complete example\n\n```yaml\n(.*?)```").FindSubmatch(b)
	if m == nil {
		t.Fatal("configuration.md has no complete example")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "admin.token"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SLUICE_READ_TOKEN", "s3cret-read")
	path := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(path, m[1], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := config.Load([]string{path}, nil); err != nil {
		t.Errorf("the example of configuration.md does not validate:\n%v", err)
	}
}
