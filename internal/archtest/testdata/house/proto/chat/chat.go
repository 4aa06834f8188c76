// Package chat stands for generated protos.
package chat
