// Package app is fine.
package app
