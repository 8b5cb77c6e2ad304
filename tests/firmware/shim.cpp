// Runs the firmware sketch's setup() and loop() against a pty and a control socket.
//
//   relaxd_mcu_host SERIAL_FD CONTROL_FD [manual]
//
// SERIAL_FD is the master side of a pty: the daemon opens the slave as it opens /dev/ttyACM0.
// CONTROL_FD takes lines from the test and answers each with one line:
//   ADVANCE <ms>  move the clock forward, run loop() once          -> "OK <millis>"
//   PINS          the level last written to every OUTPUT pin        -> "PINS <pin>=<level> ..."
// With "manual" the clock moves only by ADVANCE; otherwise it is real time plus every ADVANCE.
#include "Arduino.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <map>
#include <string>

void setup();
void loop();

SerialPort Serial;

static int serialFd = -1;
static int controlFd = -1;
static bool manualClock = false;
static uint64_t advancedMs = 0;
static uint64_t startedMs = 0;
static std::string received;  // bytes from the host not yet read by the sketch
static std::map<int, int> levels;  // OUTPUT pin -> last analogWrite value

static uint64_t monotonicMs() {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
}

uint32_t millis() { return (uint32_t)((manualClock ? 0 : monotonicMs() - startedMs) + advancedMs); }

void pinMode(uint8_t pin, uint8_t mode) {
  if (mode == OUTPUT && levels.find(pin) == levels.end()) levels[pin] = 0;
}

void analogWrite(uint8_t pin, int value) { levels[pin] = value; }

void SerialPort::begin(unsigned long) {}

int SerialPort::available() { return (int)received.size(); }

int SerialPort::read() {
  if (received.empty()) return -1;
  unsigned char c = (unsigned char)received[0];
  received.erase(0, 1);
  return c;
}

static void writeAll(int fd, const char *data, size_t length) {
  while (length > 0) {
    ssize_t written = write(fd, data, length);
    if (written < 0) {
      if (errno == EINTR) continue;
      return;  // no host on the line: the bytes are lost, as on a real unplugged cable
    }
    data += written;
    length -= (size_t)written;
  }
}

void SerialPort::print(const char *text) { writeAll(serialFd, text, strlen(text)); }

void SerialPort::print(char c) { writeAll(serialFd, &c, 1); }

static void answer(const std::string &line) {
  std::string text = line + "\n";
  writeAll(controlFd, text.data(), text.size());
}

static void control(const std::string &line) {
  if (line.rfind("ADVANCE ", 0) == 0) {
    advancedMs += strtoull(line.c_str() + 8, NULL, 10);
    loop();
    answer("OK " + std::to_string(millis()));
  } else if (line == "PINS") {
    std::string text = "PINS";
    for (const auto &pin : levels) text += " " + std::to_string(pin.first) + "=" + std::to_string(pin.second);
    answer(text);
  } else {
    answer("ERROR unknown control line: " + line);
  }
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s SERIAL_FD CONTROL_FD [manual]\n", argv[0]);
    return 2;
  }
  serialFd = atoi(argv[1]);
  controlFd = atoi(argv[2]);
  manualClock = argc > 3 && strcmp(argv[3], "manual") == 0;
  startedMs = monotonicMs();
  setup();
  std::string pending;
  for (;;) {
    struct pollfd fds[2] = {{serialFd, POLLIN, 0}, {controlFd, POLLIN, 0}};
    poll(fds, 2, 1);
    if (fds[0].revents & POLLIN) {
      char buffer[256];
      ssize_t count = read(serialFd, buffer, sizeof buffer);
      if (count > 0) received.append(buffer, (size_t)count);
    }
    if (fds[1].revents & (POLLIN | POLLHUP)) {
      char buffer[256];
      ssize_t count = read(controlFd, buffer, sizeof buffer);
      if (count <= 0) return 0;  // the test is gone
      pending.append(buffer, (size_t)count);
      size_t end;
      while ((end = pending.find('\n')) != std::string::npos) {
        std::string line = pending.substr(0, end);
        pending.erase(0, end + 1);
        control(line);
      }
    }
    loop();
  }
}
