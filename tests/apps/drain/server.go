// Go's net/http as it is usually written: no signal handler (SIGTERM kills
// it mid-request), 30 ms of work per request. Answers its pid.
// Usage: server PORT
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
		time.Sleep(30 * time.Millisecond)
		w.Header().Set("Connection", "close")
		fmt.Fprintf(w, "%d\n", os.Getpid())
	})
	log.Fatal(http.ListenAndServe(":"+os.Args[1], nil))
}
