package config

import (
	"fmt"
	"io"
	"reflect"
	"strings"
	"time"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/shard"
)

// Key is one configuration key as the reference documents it: found by
// walking the Config types (every `koanf` tag), with the default of its
// package and the words of keyDocs.
type Key struct {
	// Path is the key as messages write it, with <name> for an entry of a
	// map of named entries and [] for an item of a list:
	// sources.<name>.batch_size, rules[].pattern.
	Path string
	// Type is what the value is: string, integer, boolean, number,
	// duration, size, a list of strings, ...
	Type string
	// Default is the value when the key is left out, as it is written in a
	// file ("" when there is none).
	Default string
	// Section is true for a key that holds other keys.
	Section bool
	KeyDoc
}

// KeyDoc is what the reference says about a key beyond what its type tells.
type KeyDoc struct {
	Doc     string // what it does
	Range   string // the values accepted
	Example string // a value as written in YAML
}

// Keys returns every key of the configuration, in the order of the types'
// fields. Keys without an entry in keyDocs have an empty KeyDoc; see
// KeyDocsProblems.
func Keys() []Key {
	var out []Key
	walkKeys("", reflect.TypeFor[Config](), reflect.ValueOf(*Default()), &out)
	for i := range out {
		out[i].KeyDoc = keyDocs[out[i].Path]
	}
	return out
}

// KeyDocsProblems lists keys without documentation and documentation of
// keys that do not exist: the test of the reference fails on either.
func KeyDocsProblems() []string {
	var problems []string
	seen := map[string]bool{}
	for _, k := range Keys() {
		seen[k.Path] = true
		if d, ok := keyDocs[k.Path]; !ok || d.Doc == "" {
			problems = append(problems, k.Path+": not documented in config/reference_docs.go")
		}
	}
	for _, path := range sortedKeys(keyDocs) {
		if !seen[path] {
			problems = append(problems, path+": documented in config/reference_docs.go but not a key")
		}
	}
	return problems
}

// walkKeys appends the keys of struct type t under prefix; def holds its
// defaults (the zero Value when there are none).
func walkKeys(prefix string, t reflect.Type, def reflect.Value, out *[]Key) {
	fields := tagged(t)
	order := make([]string, t.NumField())
	for name, i := range fields {
		order[i] = name
	}
	for i, name := range order {
		if name == "" {
			continue
		}
		f := t.Field(i)
		path := join(prefix, name)
		var fdef reflect.Value
		if def.IsValid() {
			fdef = def.Field(i)
		}
		walkValue(path, f.Type, fdef, out)
	}
}

func walkValue(path string, t reflect.Type, def reflect.Value, out *[]Key) {
	switch {
	case t.Kind() == reflect.Pointer && isSection(t.Elem()):
		// brokers.<name>.kafka: a section whose presence says the kind.
		*out = append(*out, Key{Path: path, Type: "mapping", Section: true})
		walkKeys(path, t.Elem(), fresh(t.Elem(), nil), out)
	case isSection(t):
		*out = append(*out, Key{Path: path, Type: "mapping", Section: true})
		walkKeys(path, t, def, out)
	case t.Kind() == reflect.Map:
		*out = append(*out, Key{Path: path, Type: "mapping of names", Section: true})
		walkEntry(path+".<name>", t.Elem(), out)
	case t.Kind() == reflect.Slice && isSection(t.Elem()):
		*out = append(*out, Key{Path: path, Type: "list of mappings", Section: true})
		walkKeys(path+"[]", t.Elem(), fresh(t.Elem(), nil), out)
	default:
		*out = append(*out, Key{Path: path, Type: typeName(t), Default: defaultText(def)})
	}
}

// walkEntry walks a map entry's type, with the defaults a new entry gets;
// a source's defaults depend on its mode, so both are shown.
func walkEntry(path string, t reflect.Type, out *[]Key) {
	if t != reflect.TypeFor[consumer.SourceConfig]() {
		walkKeys(path, t, fresh(t, nil), out)
		return
	}
	var stream, async []Key
	walkKeys(path, t, reflect.ValueOf(consumer.DefaultSourceConfig(consumer.ModeStream)), &stream)
	walkKeys(path, t, reflect.ValueOf(consumer.DefaultSourceConfig(consumer.ModeAsync)), &async)
	unset := func(s string) bool { return s == "" || s == "0" || s == "0s" }
	for i, k := range stream {
		if a := async[i].Default; a != k.Default && k.Path != path+".mode" {
			switch {
			case unset(k.Default):
				k.Default = a + " (async)"
			case unset(a):
				k.Default += " (stream)"
			default:
				k.Default = fmt.Sprintf("%s (stream), %s (async)", k.Default, a)
			}
		}
		*out = append(*out, k)
	}
}

// isSection reports whether t is a struct of keys (not a value such as a
// time or a size that a string sets).
func isSection(t reflect.Type) bool {
	return t.Kind() == reflect.Struct && t != timeType && !reflect.PointerTo(t).Implements(textUnmarshalType)
}

func typeName(t reflect.Type) string {
	switch t {
	case durationType:
		return "duration"
	case timeType:
		return "time (RFC 3339)"
	case reflect.TypeFor[shard.Bytes]():
		return "size"
	case reflect.TypeFor[shard.Age]():
		return "duration or -1"
	}
	if t.Kind() == reflect.Pointer {
		return typeName(t.Elem())
	}
	if reflect.PointerTo(t).Implements(textUnmarshalType) {
		return "string"
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Slice:
		return "list of " + typeName(t.Elem()) + "s"
	}
	return t.String()
}

// defaultText renders a default as a file writes it; "" for none.
func defaultText(v reflect.Value) string {
	if !v.IsValid() {
		return ""
	}
	if v.Kind() == reflect.Bool {
		return fmt.Sprint(v.Bool())
	}
	if v.Kind() == reflect.Pointer && v.IsNil() {
		return ""
	}
	e := encode(v)
	switch x := e.(type) {
	case nil:
		switch {
		case v.Type() == durationType:
			return "0s"
		case v.Kind() == reflect.Int, v.Kind() == reflect.Int64, v.Kind() == reflect.Float64:
			return "0"
		}
		return ""
	case string:
		return x
	case time.Time:
		return x.Format(time.RFC3339)
	default:
		return fmt.Sprint(x)
	}
}

// WriteReference writes the configuration reference as Markdown: every key
// with its type, default, accepted values and an example.
func WriteReference(w io.Writer) error {
	var b strings.Builder
	b.WriteString(referenceHeader)
	section := ""
	for _, k := range Keys() {
		top, _, _ := strings.Cut(k.Path, ".")
		top, _, _ = strings.Cut(top, "[")
		if top != section {
			section = top
			fmt.Fprintf(&b, "\n## %s\n", top)
		}
		fmt.Fprintf(&b, "\n### `%s`\n\n%s\n\n", k.Path, k.Doc)
		facts := []string{"**type** " + k.Type}
		if !k.Section {
			facts = append(facts, "**default** "+code(k.Default))
		}
		if k.Range != "" {
			facts = append(facts, "**accepted** "+k.Range)
		}
		if k.Example != "" {
			facts = append(facts, "**example** "+code(k.Example))
		}
		fmt.Fprintf(&b, "%s\n", strings.Join(facts, " · "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func code(s string) string {
	if s == "" {
		return "none"
	}
	return "`" + s + "`"
}

const referenceHeader = `<!-- Generated by ` + "`make docs`" + ` from the configuration types (config/reference.go and
config/reference_docs.go). Do not edit: a test fails when this file and the code disagree. -->

# Configuration reference

Every key sluice reads, as written in a YAML or TOML file. ` + "`<name>`" + ` stands for
the name of an entry you choose (a function, a source, a broker, a dead-letter
destination); ` + "`[]`" + ` for an item of a list. Each key can also be set from the
environment (` + "`SLUICE_`" + ` + the key path in capitals, two underscores between
levels: ` + "`SLUICE_SOURCES__ORDERS__BATCH_SIZE=500`" + `) or with
` + "`--set key=value`" + `; items of lists can only be written in a file. See
[configuration](../configuration.md) for how the layers combine.

Durations use Go syntax (` + "`90s`" + `, ` + "`1h30m`" + `); "duration or -1" also accepts ` + "`-1`" + `
for no limit. Sizes are an integer with an optional unit: ` + "`B KB MB GB TB`" + `
(powers of 1000) or ` + "`KiB MiB GiB TiB`" + ` (powers of 1024). A default written
"(stream)" or "(async)" applies to sources of that mode only.
`
