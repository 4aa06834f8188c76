package app

// Paced exposes paced to the tests.
var Paced = paced
