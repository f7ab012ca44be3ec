package config

import (
	"encoding"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/cluster"
	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/retention"
)

// decoder copies the raw tree koanf merged (files, environment, flags) into
// the typed Config, following `koanf` struct tags. It is ours rather than
// mapstructure's so that every problem names its key in the operator's
// terms (`sources.orders.batch_size: expected an integer, got "lots"`),
// unknown keys list the allowed ones, all problems are collected, and new
// map entries start from their package's defaults (which for a source
// depend on its mode).
type decoder struct {
	problems []error
	keys     []string // the keys of problems
	// origin returns a note on where a key was set when it was not set by
	// a file (e.g. "set by SLUICE_ACCOUNT__CONCURENCY"), or "".
	origin func(key string) string
}

var (
	durationType      = reflect.TypeFor[time.Duration]()
	timeType          = reflect.TypeFor[time.Time]()
	textUnmarshalType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// fresh returns a new settable value of type t for a map entry, list item
// or pointer the raw tree brings into being, with its package's defaults.
func fresh(t reflect.Type, raw any) reflect.Value {
	v := reflect.New(t).Elem()
	switch t {
	case reflect.TypeFor[consumer.SourceConfig]():
		mode, _ := field(raw, "mode").(string)
		v.Set(reflect.ValueOf(consumer.DefaultSourceConfig(consumer.Mode(mode))))
	case reflect.TypeFor[retention.Config]():
		v.Set(reflect.ValueOf(retention.DefaultConfig()))
	case reflect.TypeFor[dispatch.FunctionConfig]():
		v.Set(reflect.ValueOf(dispatch.FunctionConfig{Timeout: dispatch.DefaultTimeout}))
	case reflect.TypeFor[consumer.KafkaConfig]():
		v.Set(reflect.ValueOf(consumer.DefaultKafkaConfig()))
	case reflect.TypeFor[consumer.NATSConfig]():
		v.Set(reflect.ValueOf(consumer.DefaultNATSConfig()))
	case reflect.TypeFor[cluster.Config]():
		v.Set(reflect.ValueOf(cluster.Config{}.WithDefaults()))
	}
	return v
}

func field(raw any, name string) any {
	m, _ := raw.(map[string]any)
	return m[name]
}

// fail records a problem with the value at key, saying where it was set
// when that was not a file.
func (d *decoder) fail(key, format string, args ...any) {
	if d.origin != nil {
		if o := d.origin(key); o != "" {
			format += " (" + o + ")"
		}
	}
	d.record(problem(key, format, args...), key)
}

func (d *decoder) record(err error, key string) {
	d.problems = append(d.problems, err)
	d.keys = append(d.keys, key)
}

// failed reports whether msg is about a key that failed to decode.
func (d *decoder) failed(msg string) bool {
	for _, k := range d.keys {
		if strings.HasPrefix(msg, k+":") || strings.HasPrefix(msg, k+" ") {
			return true
		}
	}
	return false
}

func (d *decoder) typeError(key, want string, raw any) {
	d.fail(key, "expected %s, got %s", want, describe(raw))
}

// decode sets v (settable) from raw; key is v's name in messages.
func (d *decoder) decode(key string, raw any, v reflect.Value) {
	t := v.Type()
	if raw == nil {
		// `nats:` with nothing after it still says "a NATS broker".
		if t.Kind() == reflect.Pointer && t.Elem().Kind() == reflect.Struct && v.IsNil() {
			v.Set(fresh(t.Elem(), nil).Addr())
		}
		return
	}
	switch {
	case t == durationType:
		d.duration(key, raw, v)
		return
	case t == timeType:
		d.time(key, raw, v)
		return
	case t.Kind() == reflect.Pointer:
		if v.IsNil() {
			v.Set(fresh(t.Elem(), raw).Addr())
		}
		d.decode(key, raw, v.Elem())
		return
	case reflect.PointerTo(t).Implements(textUnmarshalType):
		s, ok := scalarText(raw)
		if !ok {
			d.typeError(key, "a string", raw)
			return
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
			d.fail(key, "%v", err)
		}
		return
	}

	switch t.Kind() {
	case reflect.String:
		s, ok := raw.(string)
		if !ok {
			d.typeError(key, "a string", raw)
			return
		}
		v.SetString(s)
	case reflect.Bool:
		switch b := raw.(type) {
		case bool:
			v.SetBool(b)
		case string:
			p, err := strconv.ParseBool(strings.TrimSpace(b))
			if err != nil {
				d.typeError(key, "true or false", raw)
				return
			}
			v.SetBool(p)
		default:
			d.typeError(key, "true or false", raw)
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := toInt(raw)
		if !ok || v.OverflowInt(n) {
			d.typeError(key, "an integer", raw)
			return
		}
		v.SetInt(n)
	case reflect.Float32, reflect.Float64:
		f, ok := toFloat(raw)
		if !ok {
			d.typeError(key, "a number", raw)
			return
		}
		v.SetFloat(f)
	case reflect.Slice:
		d.slice(key, raw, v)
	case reflect.Map:
		d.mapping(key, raw, v)
	case reflect.Struct:
		d.structure(key, raw, v)
	default:
		// A field type this decoder does not know is a bug of sluice, not
		// of the operator's file; say so plainly.
		d.fail(key, "cannot be set from configuration (sluice does not know type %s)", t)
	}
}

func (d *decoder) duration(key string, raw any, v reflect.Value) {
	if n, ok := toInt(raw); ok && n == 0 {
		v.SetInt(0)
		return
	}
	s, ok := raw.(string)
	if !ok {
		if _, isNum := toFloat(raw); isNum {
			d.fail(key, "%v is not a duration (write a unit, e.g. \"%vs\")", raw, raw)
		} else {
			d.typeError(key, "a duration", raw)
		}
		return
	}
	p, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		d.fail(key, "%q is not a duration (Go syntax, e.g. \"90s\", \"1h30m\")", s)
		return
	}
	v.SetInt(int64(p))
}

func (d *decoder) time(key string, raw any, v reflect.Value) {
	switch x := raw.(type) {
	case time.Time:
		v.Set(reflect.ValueOf(x))
	case string:
		p, err := time.Parse(time.RFC3339, strings.TrimSpace(x))
		if err != nil {
			d.fail(key, "%q is not an RFC 3339 timestamp (e.g. \"2024-05-01T00:00:00Z\")", x)
			return
		}
		v.Set(reflect.ValueOf(p))
	default:
		d.typeError(key, "an RFC 3339 timestamp", raw)
	}
}

func (d *decoder) slice(key string, raw any, v reflect.Value) {
	items, ok := raw.([]any)
	if !ok {
		// From the environment or --set a list of strings comes as
		// "a,b,c"; a file may write it so too.
		s, isString := raw.(string)
		if !isString || v.Type().Elem().Kind() != reflect.String {
			d.typeError(key, "a list", raw)
			return
		}
		items = nil
		for _, part := range strings.Split(s, ",") {
			if part = strings.TrimSpace(part); part != "" {
				items = append(items, part)
			}
		}
	}
	out := reflect.MakeSlice(v.Type(), len(items), len(items))
	for i, item := range items {
		elem := fresh(v.Type().Elem(), item)
		d.decode(fmt.Sprintf("%s[%d]", key, i), item, elem)
		out.Index(i).Set(elem)
	}
	v.Set(out)
}

func (d *decoder) mapping(key string, raw any, v reflect.Value) {
	m, ok := raw.(map[string]any)
	if !ok {
		d.typeError(key, "a mapping of names", raw)
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMapWithSize(v.Type(), len(m)))
	}
	for _, name := range sortedKeys(m) {
		elem := fresh(v.Type().Elem(), m[name])
		if old := v.MapIndex(reflect.ValueOf(name)); old.IsValid() {
			elem.Set(old)
		}
		d.decode(join(key, name), m[name], elem)
		v.SetMapIndex(reflect.ValueOf(name), elem)
	}
}

func (d *decoder) structure(key string, raw any, v reflect.Value) {
	m, ok := raw.(map[string]any)
	if !ok {
		d.typeError(key, "a mapping", raw)
		return
	}
	fields := tagged(v.Type())
	for _, name := range sortedKeys(m) {
		i, known := fields[name]
		if !known {
			d.unknown(join(key, name), name, fields)
			continue
		}
		d.decode(join(key, name), m[name], v.Field(i))
	}
}

func (d *decoder) unknown(key, name string, fields map[string]int) {
	allowed := sortedKeys(fields)
	msg := "unknown key"
	if d.origin != nil {
		if o := d.origin(key); o != "" {
			msg += " (" + o + ")"
		}
	}
	if s := suggest(name, allowed); s != "" {
		msg += "; did you mean " + s + "?"
	}
	d.record(problem(key, "%s (allowed: %s)", msg, strings.Join(allowed, ", ")), key)
}

// tagged maps the koanf tags of struct type t to field indexes.
func tagged(t reflect.Type) map[string]int {
	out := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		if tag, _, _ := strings.Cut(f.Tag.Get("koanf"), ","); tag != "" && tag != "-" && f.IsExported() {
			out[tag] = i
		}
	}
	return out
}

// suggest returns the allowed key closest to name when it is close enough
// to be a typo: the same once case, "_" and "-" are ignored, or at most two
// edits away (one for short keys).
func suggest(name string, allowed []string) string {
	norm := func(s string) string {
		return strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(s))
	}
	best, bestDist := "", math.MaxInt
	for _, a := range allowed {
		if norm(a) == norm(name) {
			return a
		}
		if dist := levenshtein(name, a); dist < bestDist {
			best, bestDist = a, dist
		}
	}
	limit := 2
	if len(name) <= 4 {
		limit = 1
	}
	if bestDist <= limit {
		return best
	}
	return ""
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func toInt(raw any) (int64, bool) {
	switch x := raw.(type) {
	case int:
		return int64(x), true
	case int64:
		return x, true
	case uint64:
		return int64(x), x <= math.MaxInt64
	case float64:
		return int64(x), x == math.Trunc(x) && math.Abs(x) < 1<<53
	case string:
		n, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64)
		return n, err == nil
	}
	return 0, false
}

func toFloat(raw any) (float64, bool) {
	switch x := raw.(type) {
	case float64:
		return x, true
	case int:
		return float64(x), true
	case int64:
		return float64(x), true
	case uint64:
		return float64(x), true
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
		return f, err == nil
	}
	return 0, false
}

// scalarText renders a string or a number for a TextUnmarshaler, so that
// `max_bytes: 1048576` and `max_record_age: -1` work unquoted.
func scalarText(raw any) (string, bool) {
	if s, ok := raw.(string); ok {
		return s, true
	}
	if f, ok := toFloat(raw); ok {
		return strconv.FormatFloat(f, 'f', -1, 64), true
	}
	return "", false
}

// describe renders a raw value for a message.
func describe(raw any) string {
	switch x := raw.(type) {
	case string:
		return strconv.Quote(x)
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case time.Time:
		return x.Format(time.RFC3339)
	default:
		return fmt.Sprint(x)
	}
}

func join(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
