package config

import (
	"encoding"
	"reflect"
	"time"

	"github.com/knadh/koanf/parsers/yaml"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/shard"
)

// YAML renders the configuration as a file that Load reads back to the same
// Config: every default and override applied, keys at their zero value left
// out. Secrets are not part of a Config, only where they are kept (files,
// environment variables); the passwords and query strings of URLs are
// replaced by "xxxxx" (Redacted), so such a URL does not read back the same.
func (c *Config) YAML() ([]byte, error) {
	m, _ := encode(reflect.ValueOf(c.Redacted()).Elem()).(map[string]any)
	return yaml.Parser().Marshal(m)
}

// Redacted returns a copy of c whose URLs (functions, NATS brokers) have
// their passwords and query values replaced, for showing it.
func (c *Config) Redacted() *Config {
	out := *c
	if c.Functions != nil {
		out.Functions = make(map[string]dispatch.FunctionConfig, len(c.Functions))
	}
	for name, f := range c.Functions {
		f.URL = dispatch.RedactURL(f.URL)
		out.Functions[name] = f
	}
	if c.Brokers != nil {
		out.Brokers = make(map[string]consumer.BrokerConfig, len(c.Brokers))
	}
	for name, b := range c.Brokers {
		if b.NATS != nil && b.NATS.URL != "" {
			n := *b.NATS
			n.URL = dispatch.RedactURL(n.URL)
			b.NATS = &n
		}
		out.Brokers[name] = b
	}
	return &out
}

// encode turns v into the plain values of a parsed file, following koanf
// tags; it returns nil for a zero value.
func encode(v reflect.Value) any {
	if v.IsZero() {
		return nil
	}
	switch t := v.Type(); {
	case t == durationType:
		return shard.FormatDuration(time.Duration(v.Int()))
	case t == timeType:
		return v.Interface().(time.Time).Format(time.RFC3339Nano)
	case t.Implements(reflect.TypeFor[encoding.TextMarshaler]()):
		b, err := v.Interface().(encoding.TextMarshaler).MarshalText()
		if err != nil {
			return nil
		}
		return string(b)
	}
	switch v.Kind() {
	case reflect.Pointer:
		if out := encode(v.Elem()); out != nil {
			return out
		}
		if v.Elem().Kind() == reflect.Struct {
			return map[string]any{} // `nats: {}`: present, all defaults
		}
		return v.Elem().Interface() // reserved_concurrency: 0 means something
	case reflect.Struct:
		out := map[string]any{}
		for name, i := range tagged(v.Type()) {
			if f := encode(v.Field(i)); f != nil {
				out[name] = f
			}
		}
		return out
	case reflect.Map:
		out := map[string]any{}
		for _, k := range v.MapKeys() {
			e := encode(v.MapIndex(k))
			if e == nil {
				e = map[string]any{}
			}
			out[k.String()] = e
		}
		return out
	case reflect.Slice:
		out := make([]any, v.Len())
		for i := range out {
			out[i] = encode(v.Index(i))
		}
		return out
	case reflect.String:
		return v.String()
	default:
		return v.Interface()
	}
}
