// perf/peers/go/echo_server.go: the Go gorilla/websocket echo server that perf/echo_bench.sh
// compares wsed against. Owns one listener on 127.0.0.1 and one goroutine per connection (the
// standard gorilla echo loop: ReadMessage -> WriteMessage with the same type). Must never do
// anything per message beyond that echo. Prints "listening on ws://HOST:PORT/" once bound.
//
// Build offline with Debian's packages:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o BUILD_DIR/go-echo echo_server.go
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"

	"github.com/gorilla/websocket"
)

var upgrader = websocket.Upgrader{
	ReadBufferSize:  4096,
	WriteBufferSize: 4096,
	CheckOrigin:     func(r *http.Request) bool { return true },
}

func echo(w http.ResponseWriter, r *http.Request) {
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	c.SetReadLimit(1 << 20)
	for {
		mt, message, err := c.ReadMessage()
		if err != nil {
			return
		}
		if err := c.WriteMessage(mt, message); err != nil {
			return
		}
	}
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 0, "port (0 = any free port)")
	flag.Parse()
	ln, err := net.Listen("tcp", fmt.Sprintf("%s:%d", *host, *port))
	if err != nil {
		log.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	fmt.Printf("go-gorilla listening on ws://%s:%d/\n", addr.IP, addr.Port)
	os.Stdout.Sync()
	log.Fatal(http.Serve(ln, http.HandlerFunc(echo)))
}
