// Package docs holds the documentation of sluice as Markdown, and no code:
// its test (links_test.go) checks that every link of the README and of
// these pages stays inside the repository and points to a file and heading
// that exist; examples_test.go, that the configuration example is valid.
package docs
