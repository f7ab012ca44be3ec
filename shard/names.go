package shard

import "strings"

// The brokers' rules for the names sluice checks at start-up, in one place
// for every package that validates settings (consumer, retention).

// ValidTopic reports whether s is a valid Kafka topic name: 1..249 of a-z,
// A-Z, 0-9, ".", "_", "-", and not "." or "..".
func ValidTopic(s string) bool {
	if s == "" || len(s) > 249 || s == "." || s == ".." {
		return false
	}
	return strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == ""
}

// ValidStream reports whether s is a valid JetStream stream name.
func ValidStream(s string) bool {
	return s != "" && !strings.ContainsAny(s, " \t\r\n.*>/\\")
}

// ValidSubject reports whether s is valid NATS subject syntax, wildcards
// allowed ("*" for one token, ">" as the last one).
func ValidSubject(s string) bool {
	if strings.ContainsAny(s, " \t\r\n") {
		return false
	}
	tokens := strings.Split(s, ".")
	for i, t := range tokens {
		switch {
		case t == "":
			return false
		case t == ">" && i != len(tokens)-1:
			return false
		case t != "*" && t != ">" && strings.ContainsAny(t, "*>"):
			return false
		}
	}
	return true
}
