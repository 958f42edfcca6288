// Package readme holds the README's code as compiled Go: its test checks that
// every Go block of README.md appears, line by line and in order, in
// snippets_test.go, which the compiler checks against the library's API.
package readme
