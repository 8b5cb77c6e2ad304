// A small Arduino core for running the chair's firmware sketch on a Linux PC in the tests.
//
// Only what deploy/firmware/relaxd_mcu/relaxd_mcu.ino uses: Serial (a pty), millis() (a clock
// the test moves), pinMode/analogWrite (levels the test reads back). See shim.cpp.
#pragma once
#include <stdint.h>
#include <stddef.h>

#define OUTPUT 1
#define INPUT 0

uint32_t millis();
void pinMode(uint8_t pin, uint8_t mode);
void analogWrite(uint8_t pin, int value);

class SerialPort {
 public:
  void begin(unsigned long baud);
  int available();
  int read();
  void print(const char *text);
  void print(char c);
};

extern SerialPort Serial;
