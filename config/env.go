package config

import (
	"fmt"
	"reflect"
	"strings"
)

// LoadOption changes how Load treats what it reads.
type LoadOption func(*loadOptions)

type loadOptions struct {
	// warn, when set, receives the environment variables that match no
	// key instead of Load failing on them; they are then not applied.
	warn func(msg string)
}

// WarnUnknownEnv makes a SLUICE_ variable that looks meant as a key but
// matches none a warning passed to warn (and the variable is ignored),
// instead of a problem that fails Load. `sluice run` warns; `sluice config
// validate` keeps the default and fails.
func WarnUnknownEnv(warn func(msg string)) LoadOption {
	return func(o *loadOptions) { o.warn = warn }
}

// envMatch is what a variable's levels reach in the configuration.
type envMatch struct {
	// known is false when some level names nothing: a field that does not
	// exist, or an entry of a map that exists under a close name only.
	known bool
	// structMiss is true when the level that names nothing is a field of a
	// section (the decoder reports those itself, with the allowed keys).
	structMiss bool
	// closest is the key path the variable most likely meant.
	closest []string
	// created is the key of a map entry the variable brings into being
	// (sources.new), or "".
	created string
}

// matchEnv walks segs (a variable's levels, lower case) down the
// configuration's types and the entries loaded so far (base).
func matchEnv(segs []string, base map[string]any) envMatch {
	m := envMatch{known: true}
	t := reflect.TypeFor[Config]()
	var cur any = base
	for i, seg := range segs {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		node, _ := cur.(map[string]any)
		switch {
		case t.Kind() == reflect.Struct && t != timeType && !reflect.PointerTo(t).Implements(textUnmarshalType):
			fields := tagged(t)
			name := seg
			if _, ok := fields[seg]; !ok {
				name = suggest(seg, sortedKeys(fields))
				m.miss(i > 0)
				if name == "" {
					m.closest = append(m.closest, segs[i:]...)
					return m
				}
			}
			m.closest = append(m.closest, name)
			t = t.Field(fields[name]).Type
			cur = node[name]
		case t.Kind() == reflect.Map:
			name := foldName(seg, node)
			if name == "" {
				names := sortedKeys(node)
				name = seg
				if s := suggest(seg, names); s != "" {
					m.miss(false)
					name = s
				} else if m.created == "" {
					m.created = strings.Join(append(append([]string{}, m.closest...), seg), ".")
				}
			}
			m.closest = append(m.closest, name)
			t = t.Elem()
			cur = node[name]
		default:
			// A list, or a value with levels below it: set reports it.
			m.closest = append(m.closest, segs[i:]...)
			return m
		}
	}
	return m
}

// miss records that a level names nothing; structLevel says it is a field
// of a section below the top level.
func (m *envMatch) miss(structLevel bool) {
	if m.known {
		m.known, m.structMiss = false, structLevel
	}
}

// foldName returns the entry of node that seg names, case-insensitively and
// with "_" for "-", or "".
func foldName(seg string, node map[string]any) string {
	if _, ok := node[seg]; ok {
		return seg
	}
	for _, k := range sortedKeys(node) {
		if strings.EqualFold(strings.ReplaceAll(k, "-", "_"), seg) {
			return k
		}
	}
	return ""
}

// envName is the variable that sets key path.
func envName(path []string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(strings.Join(path, "__"), "-", "_"))
}

// unknownEnv reports a variable that matches no key, with the closest key:
// a problem, or a warning when Load was asked to warn.
func (o *overrides) unknownEnv(name, msg string) {
	if o.warn != nil {
		o.warn(fmt.Sprintf("%s: %s; ignored", name, msg))
		return
	}
	o.problems = append(o.problems, problem(name, "%s", msg))
}

// closestMsg says which key a variable most likely meant.
func closestMsg(closest []string) string {
	return fmt.Sprintf("matches no configuration key (did you mean %s, which sets %s?)", envName(closest), strings.Join(closest, "."))
}

// createdBy notes, on a problem of a map entry the environment brought into
// being, which variable did, e.g. "sources.ordres was created by
// SLUICE_SOURCES__ORDRES__BATCH_SIZE".
func (o *overrides) createdBy(msg string) string {
	for _, key := range sortedKeys(o.created) {
		if strings.HasPrefix(msg, key+".") || strings.HasPrefix(msg, key+":") || strings.HasPrefix(msg, key+" ") {
			return fmt.Sprintf(" (%s was created by %s)", key, o.created[key])
		}
	}
	return ""
}
