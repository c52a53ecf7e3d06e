// Command go_server is relaunch's Go example: an HTTP server that answers
// every request with its pid, serving the listener relaunch hands it at fd 3.
//
//	go build -o /tmp/go_server examples/go_server/main.go
//	relaunch -l 127.0.0.1:8000 -- /tmp/go_server
//
// (Not `go run`: the server would be go's child, so LISTEN_PID would not
// be its pid.)
//
// Without LISTEN_FDS it binds 127.0.0.1:$PORT (default 8000) itself.
// SIGTERM/SIGINT: stop accepting, finish in-flight requests (10 s at most),
// exit 0. Documentation only: the project does not build it.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func listener() (net.Listener, error) {
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if n >= 1 && os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()) {
		f := os.NewFile(3, "listener")
		defer f.Close() // FileListener works on its own dup of fd 3
		// Never call f.Fd(): it would make the shared socket blocking.
		return net.FileListener(f)
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8000"
	}
	log.Printf("no LISTEN_FDS, binding 127.0.0.1:%s myself", port)
	return net.Listen("tcp", "127.0.0.1:"+port)
}

func main() {
	ln, err := listener()
	if err != nil {
		log.Fatalf("go_server: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		fmt.Fprintf(w, "%d\n", os.Getpid())
	})}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	drained := make(chan struct{})
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Closes the listener at once, then waits for in-flight requests.
		if err := srv.Shutdown(ctx); err != nil {
			log.Printf("go_server: %v", err)
		}
		close(drained)
	}()

	log.Printf("go_server: pid %d serving %s", os.Getpid(), ln.Addr())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("go_server: %v", err)
	}
	<-drained // Serve returns as soon as the listener closes
}
