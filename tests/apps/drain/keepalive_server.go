// Go's net/http as it is usually written, with its default keep-alive and
// no IdleTimeout: no signal handler (SIGTERM kills it mid-request), 30 ms
// of work per request, 2.5 s for /slow. Answers its pid.
// Usage: keepalive_server PORT
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(2500 * time.Millisecond)
		} else {
			time.Sleep(30 * time.Millisecond)
		}
		fmt.Fprintf(w, "%d\n", os.Getpid())
	})
	log.Fatal(http.ListenAndServe(":"+os.Args[1], nil))
}
