package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/knadh/koanf/parsers/toml/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/posflag"
	"github.com/knadh/koanf/v2"
	gotoml "github.com/pelletier/go-toml/v2"
	"github.com/spf13/pflag"
)

// EnvPrefix starts the name of every environment variable that overrides a
// key.
const EnvPrefix = "SLUICE_"

// flagKey is the pflag annotation that binds a flag to a configuration key.
const flagKey = "sluice-config-key"

// SetFlag is the name of the repeatable flag that sets any key.
const SetFlag = "set"

// RegisterFlags adds the flags Load reads to fs: --set KEY=VALUE (any key,
// repeatable), --state-dir and --admin-listen.
func RegisterFlags(fs *pflag.FlagSet) {
	fs.StringArray(SetFlag, nil, "set a configuration `key=value`, e.g. --set sources.orders.batch_size=200 (repeatable; wins over files and environment)")
	bind := func(name, key, usage string) {
		fs.String(name, "", usage)
		_ = fs.SetAnnotation(name, flagKey, []string{key}) // cannot fail: the flag was just added
	}
	bind("state-dir", "state_dir", "directory for runtime changes and embedded broker data (state_dir)")
	bind("admin-listen", "admin.listen", "host:port of the admin API (admin.listen)")
}

// Load builds the configuration from, in increasing precedence: the
// defaults, the files in order (YAML, or TOML by a .toml extension), the
// SLUICE_ environment variables, the flags RegisterFlags added to flags (nil
// for none) and their --set values. It applies the defaults of every
// section, then validates the result.
//
// On any problem it returns a nil Config and an *Error (which matches
// ErrInvalid) listing every problem it found; a file that does not parse
// stops it early, naming the file and line.
func Load(files []string, flags *pflag.FlagSet, opts ...LoadOption) (*Config, error) {
	var lo loadOptions
	for _, opt := range opts {
		opt(&lo)
	}
	k := koanf.New(".")
	for _, path := range files {
		m, err := readFile(path)
		if err != nil {
			return nil, newError(err)
		}
		if err := k.Load(tree(m), nil); err != nil {
			return nil, newError(problem(path, "%v", err))
		}
	}

	o := overrides{base: k.Raw(), tree: map[string]any{}, origins: map[string]string{}, created: map[string]string{}, warn: lo.warn}
	o.environment()
	if err := k.Load(tree(o.tree), nil); err != nil {
		return nil, newError(problem("environment", "%v", err))
	}
	if flags != nil {
		if err := k.Load(posflag.ProviderWithFlag(flags, ".", k, o.namedFlag), nil); err != nil {
			return nil, newError(problem("flags", "%v", err))
		}
		o.base, o.tree = k.Raw(), map[string]any{}
		o.setFlags(flags)
		if err := k.Load(tree(o.tree), nil); err != nil {
			return nil, newError(problem("--set", "%v", err))
		}
	}

	c := Default()
	d := decoder{origin: o.origin}
	d.decode("", k.Raw(), reflect.ValueOf(c).Elem())
	c.complete()
	problems := append(o.problems, d.problems...)
	var verr *Error
	if errors.As(c.Validate(), &verr) {
		// A value that did not decode kept its default, which may not be
		// valid in context ("yesterday" for starting_timestamp leaves it
		// unset, hence "required"): one message per key is enough.
		for _, p := range verr.Problems {
			if msg := message(p); !d.failed(msg) {
				if note := o.createdBy(msg); note != "" {
					p = fmt.Errorf("%w%s", p, note)
				}
				problems = append(problems, p)
			}
		}
	}
	if err := newError(problems...); err != nil {
		return nil, err
	}
	return c, nil
}

// tree is a koanf.Provider of a map already parsed.
type tree map[string]any

func (t tree) Read() (map[string]any, error) { return t, nil }
func (t tree) ReadBytes() ([]byte, error) {
	return nil, errors.New("config: a parsed tree has no bytes")
}

var (
	yamlLine          = regexp.MustCompile(`^yaml: line (\d+): `)
	yamlUnmarshalLine = regexp.MustCompile(`^\s*line (\d+): (.*)$`)
)

// readFile parses one file by its extension and resolves the relative paths
// it holds (state_dir, admin token files) against the file's directory, so
// that `sluice run -c /etc/sluice/sluice.yaml` works from any directory.
func readFile(path string) (map[string]any, error) {
	var parser koanf.Parser
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return nil, problem(path, "is a directory; -c takes a configuration file (.yaml, .yml, .json or .toml)")
	}
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".yaml", ".yml", ".json":
		parser = yaml.Parser()
	case ".toml":
		parser = toml.Parser()
	case "":
		return nil, problem(path, "has no extension; name the file .yaml, .yml, .json or .toml so sluice knows how to read it")
	default:
		return nil, problem(path, "unknown file type %q (use .yaml, .yml, .json or .toml)", ext)
	}
	b, err := file.Provider(path).ReadBytes()
	if err != nil {
		return nil, newError(fmt.Errorf("%w: %w", ErrInvalid, err)) // "open PATH: no such file or directory"
	}
	m, err := parser.Unmarshal(b)
	var tomlErr *gotoml.DecodeError
	switch {
	case err == nil:
	case errors.As(err, &tomlErr):
		row, col := tomlErr.Position()
		return nil, fmt.Errorf("%w: %s:%d:%d: %s", ErrInvalid, path, row, col, strings.TrimPrefix(tomlErr.Error(), "toml: "))
	case strings.HasPrefix(err.Error(), "toml: "):
		return nil, fmt.Errorf("%w: %s: %s", ErrInvalid, path, strings.TrimPrefix(err.Error(), "toml: "))
	case strings.HasPrefix(err.Error(), "yaml: unmarshal errors:\n"):
		// One problem per line, e.g. a key defined twice.
		var errs []error
		for _, line := range strings.Split(err.Error(), "\n")[1:] {
			if sub := yamlUnmarshalLine.FindStringSubmatch(line); sub != nil {
				msg := strings.Replace(sub[2], "into map[string]interface {}", "into a mapping (the top level must be a mapping of keys)", 1)
				errs = append(errs, fmt.Errorf("%w: %s:%s: %s", ErrInvalid, path, sub[1], msg))
			}
		}
		if len(errs) > 0 {
			return nil, newError(errs...)
		}
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalid, path, err)
	case yamlLine.MatchString(err.Error()):
		// yaml reports the line where the enclosing block starts for some
		// errors; it is still the best pointer there is.
		line := yamlLine.FindStringSubmatch(err.Error())[1]
		return nil, fmt.Errorf("%w: %s:%s: %s", ErrInvalid, path, line, yamlLine.ReplaceAllString(err.Error(), ""))
	default:
		return nil, fmt.Errorf("%w: %s: %s", ErrInvalid, path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if m == nil {
		m = map[string]any{} // an empty file
	}
	dir := filepath.Dir(path)
	rel := func(v any) any {
		s, ok := v.(string)
		if !ok || s == "" || filepath.IsAbs(s) {
			return v
		}
		if abs, err := filepath.Abs(filepath.Join(dir, s)); err == nil {
			return abs // stays right if the process changes directory
		}
		return filepath.Join(dir, s)
	}
	if v, ok := m["state_dir"]; ok {
		m["state_dir"] = rel(v)
	}
	if admin, ok := m["admin"].(map[string]any); ok {
		tokens, _ := admin["tokens"].([]any)
		for _, t := range tokens {
			if t, ok := t.(map[string]any); ok {
				if v, ok := t["file"]; ok {
					t["file"] = rel(v)
				}
			}
		}
	}
	relFiles(m, rel)
	relBrokerFiles(m, rel)
	return m, nil
}

// relFiles resolves the file paths of the admin's and the functions' tls
// settings and of the functions' header values with rel.
func relFiles(m map[string]any, rel func(any) any) {
	resolve := func(v any, keys ...string) {
		t, _ := v.(map[string]any)
		for _, k := range keys {
			if v, ok := t[k]; ok {
				t[k] = rel(v)
			}
		}
	}
	tlsKeys := []string{"ca_file", "cert_file", "key_file", "client_ca_file"}
	if admin, ok := m["admin"].(map[string]any); ok {
		resolve(admin["tls"], tlsKeys...)
	}
	fns, _ := m["functions"].(map[string]any)
	for _, f := range fns {
		f, _ := f.(map[string]any)
		resolve(f["tls"], tlsKeys...)
		headers, _ := f["headers"].(map[string]any)
		for _, h := range headers {
			resolve(h, "value_file")
		}
	}
}

// brokerFileKeys are the keys of brokers.X.kafka and brokers.X.nats (and
// of their tls and sasl blocks) that name files.
var brokerFileKeys = []string{"ca_file", "cert_file", "key_file", "password_file", "token_file",
	"client_secret_file", "creds_file", "nkey_file"}

// relBrokerFiles resolves the broker file paths of m with rel.
func relBrokerFiles(m map[string]any, rel func(any) any) {
	brokers, _ := m["brokers"].(map[string]any)
	for _, b := range brokers {
		b, _ := b.(map[string]any)
		for _, kind := range []string{"kafka", "nats"} {
			k, _ := b[kind].(map[string]any)
			for _, block := range []map[string]any{k, asMap(k["tls"]), asMap(k["sasl"])} {
				for _, key := range brokerFileKeys {
					if v, ok := block[key]; ok {
						block[key] = rel(v)
					}
				}
			}
		}
	}
}

func asMap(v any) map[string]any { m, _ := v.(map[string]any); return m }

// overrides gathers what the environment and flags set on top of the files.
type overrides struct {
	base     map[string]any    // what is loaded so far, to resolve names against
	tree     map[string]any    // the overrides, nested like a file
	origins  map[string]string // key → where it was set ("SLUICE_X", "--set", "--state-dir")
	created  map[string]string // map entry the environment brought into being (sources.new) → its first variable
	warn     func(msg string)  // WarnUnknownEnv's, or nil
	problems []error
}

// topKeys are the keys of a file's top level.
var topKeys = tagged(reflect.TypeFor[Config]())

// environment reads SLUICE_ variables. The name after the prefix is the key
// path, lower-cased, with "__" between levels (a single "_" stays part of a
// key): SLUICE_ACCOUNT__MIN_UNRESERVED=50 sets account.min_unreserved. A name
// matches a map entry case-insensitively, and "_" matches "-", so
// SLUICE_DEAD_LETTERS__DEAD_BUS__RETENTION reaches dead_letters.dead-bus.
// Variables whose first level is not a top-level key are not overrides and
// are left alone (SLUICE_READ_TOKEN may hold a token).
func (o *overrides) environment() {
	vars, _ := env.Provider(EnvPrefix, "", nil).Read() // Read cannot fail without a delimiter
	tokenVars := map[string]bool{}
	if admin, ok := o.base["admin"].(map[string]any); ok {
		tokens, _ := admin["tokens"].([]any)
		for _, t := range tokens {
			if name, ok := field(t, "env").(string); ok {
				tokenVars[name] = true
			}
		}
	}
	for _, name := range sortedKeys(vars) {
		rest := strings.ToLower(strings.TrimPrefix(name, EnvPrefix))
		segs := strings.Split(rest, "__")
		if _, ok := topKeys[segs[0]]; !ok {
			if tokenVars[name] {
				continue
			}
			if hint := envHint(rest); hint != "" {
				o.unknownEnv(name, fmt.Sprintf("not a configuration key; levels are separated by two underscores (did you mean %s%s?)", EnvPrefix, hint))
			} else if m := matchEnv(segs, o.base); len(segs) > 1 && isTopKey(m.closest[0]) {
				// SLUICE_SOURCE__ORDERS__...: meant as a key, with a typo in
				// the first level.
				o.unknownEnv(name, closestMsg(m.closest))
			}
			continue
		}
		// A level that names nothing: a field of a section is reported by
		// the decoder with the allowed keys, unless Load only warns; an
		// entry that exists under a close name is a typo, not a new entry.
		m := matchEnv(segs, o.base)
		if !m.known && (!m.structMiss || o.warn != nil) {
			o.unknownEnv(name, closestMsg(m.closest))
			continue
		}
		if _, seen := o.created[m.created]; m.created != "" && !seen {
			o.created[m.created] = name
		}
		value, _ := vars[name].(string) // the provider reads strings
		o.set(name, segs, value, true)
	}
}

func isTopKey(name string) bool {
	_, ok := topKeys[name]
	return ok
}

// envHint guesses the variable meant by a name whose levels were separated by
// one underscore (ACCOUNT_CONCURRENCY for ACCOUNT__CONCURRENCY), or returns
// "". It only guesses when the name ends in a key of that section, so that
// unrelated SLUICE_ variables are left alone.
func envHint(rest string) string {
	for _, top := range sortedKeys(topKeys) {
		after, ok := strings.CutPrefix(rest, top+"_")
		if !ok {
			continue
		}
		t := reflect.TypeFor[Config]().Field(topKeys[top]).Type
		switch t.Kind() {
		case reflect.Struct:
			for _, f := range sortedKeys(tagged(t)) {
				if after == f || strings.HasPrefix(after, f+"_") {
					return strings.ToUpper(top + "__" + f + strings.Replace(strings.TrimPrefix(after, f), "_", "__", 1))
				}
			}
		case reflect.Map:
			for _, f := range sortedKeys(tagged(t.Elem())) {
				if name, ok := strings.CutSuffix(after, "_"+f); ok && name != "" {
					return strings.ToUpper(top + "__" + name + "__" + f)
				}
			}
		}
	}
	return ""
}

// namedFlag is the posflag callback: a flag bound to a key by RegisterFlags
// overrides it when given on the command line.
func (o *overrides) namedFlag(f *pflag.Flag) (string, any) {
	keys := f.Annotations[flagKey]
	if len(keys) != 1 || !f.Changed {
		return "", nil
	}
	o.origins[keys[0]] = "set by --" + f.Name
	return keys[0], f.Value.String()
}

// setFlags applies --set key=value; the key is written as in messages
// (sources.orders.batch_size) and matched exactly.
func (o *overrides) setFlags(flags *pflag.FlagSet) {
	sets, err := flags.GetStringArray(SetFlag)
	if err != nil {
		return // RegisterFlags was not called on this set: nothing to apply
	}
	for _, s := range sets {
		key, value, ok := strings.Cut(s, "=")
		if !ok || key == "" {
			o.problems = append(o.problems, problem("--set "+s, "want key=value, e.g. --set sources.orders.batch_size=200"))
			continue
		}
		o.set("--set "+key, strings.Split(key, "."), value, false)
	}
}

// set records value at the key path segs; fold matches existing names
// case-insensitively with "_" for "-". A list cannot be entered: its items
// have no names to override by.
func (o *overrides) set(origin string, segs []string, value string, fold bool) {
	var path []string
	var cur any = o.base
	for i, seg := range segs {
		if j := strings.IndexByte(seg, '['); j > 0 {
			// rules[0].concurrency: a list's items have no names to set.
			path = append(path, seg[:j])
			if isList(path) {
				o.problems = append(o.problems, problem(origin, "%s is a list; its items can only be set in a file%s", strings.Join(path, "."), listHint(path)))
			} else {
				o.problems = append(o.problems, problem(origin, "%s: [index] is not part of a key; write keys as in messages, e.g. sources.orders.batch_size", strings.Join(path, ".")))
			}
			return
		}
		if _, isList := cur.([]any); isList {
			o.problems = append(o.problems, problem(origin, "%s is a list; its items can only be set in a file%s", strings.Join(path, "."), listHint(path)))
			return
		}
		m, _ := cur.(map[string]any)
		name := seg
		if _, exact := m[seg]; !exact && fold {
			for _, k := range sortedKeys(m) {
				if strings.EqualFold(strings.ReplaceAll(k, "-", "_"), seg) {
					name = k
					break
				}
			}
		}
		if name == "" {
			o.problems = append(o.problems, problem(origin, "empty name at level %d", i+1))
			return
		}
		path = append(path, name)
		cur = m[name]
	}
	node := o.tree
	for _, name := range path[:len(path)-1] {
		next, ok := node[name].(map[string]any)
		if !ok {
			next = map[string]any{}
			node[name] = next
		}
		node = next
	}
	node[path[len(path)-1]] = value
	key := strings.Join(path, ".")
	o.origins[key] = "set by " + origin
}

// isList reports whether the key at path (names of entries included) is a
// list, by the configuration's types.
func isList(path []string) bool {
	t := reflect.TypeFor[Config]()
	for _, name := range path {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch t.Kind() {
		case reflect.Map:
			t = t.Elem()
		case reflect.Struct:
			i, ok := tagged(t)[name]
			if !ok {
				return false
			}
			t = t.Field(i).Type
		default:
			return false
		}
	}
	return t.Kind() == reflect.Slice
}

// listHint points at the live way to change a list's items, where there is
// one.
func listHint(path []string) string {
	if strings.Join(path, ".") == "rules" {
		return " (a running sluice changes a rule with `sluice rules set PATTERN --concurrency N`)"
	}
	return ""
}

// origin says where a key, or something under it, was set, if not in a
// file.
func (o *overrides) origin(key string) string {
	if s, ok := o.origins[key]; ok {
		return s
	}
	keys := sortedKeys(o.origins)
	if i := slices.IndexFunc(keys, func(k string) bool { return strings.HasPrefix(k, key+".") }); i >= 0 {
		return o.origins[keys[i]]
	}
	return ""
}
